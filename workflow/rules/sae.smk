# One Matryoshka SAE per layer, trained streaming from that layer's activations (resumable); or, with
# params sae.source, each layer's SAE imported from another tool's file (checked against the layer's activations)
# by `sae_import`, which then makes the same files.


rule sae:
    input:
        "results/activations/layer{layer}.h5",
    output:
        checkpoint="results/sae/layer{layer}.pt",
        metrics="results/sae/layer{layer}.json",
    params:
        cfg=as_json({key: value for key, value in config["sae"].items() if key != "source"}),
        precision=precision_for("sae"),
    log:
        "results/logs/sae/layer{layer}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        "cafe sae --params {params.cfg:q} --layer {wildcards.layer} --activations {input} --out {output.checkpoint} "
        "--metrics {output.metrics} --precision {params.precision} > {log} 2>&1"


rule sae_summary:
    input:
        expand("results/sae/layer{layer}.json", layer=LAYERS),
    output:
        "results/metrics/sae.json",
    log:
        "results/logs/sae_summary.log",
    shell:
        "cafe sae-summary {input} --out {output} > {log} 2>&1"


if SAE_SOURCE is not None:

    ruleorder: sae_import > sae

    rule sae_import:
        input:
            activations="results/activations/layer{layer}.h5",
            source=sae_source_input,
        output:
            checkpoint="results/sae/layer{layer}.pt",
            metrics="results/sae/layer{layer}.json",
        params:
            format=SAE_SOURCE.format,
            options=as_json(SAE_SOURCE.options),
            source=lambda wildcards: SAE_SOURCE.path_for(int(wildcards.layer)),
        log:
            "results/logs/sae/layer{layer}.log",
        shell:
            "cafe sae-import --format {params.format} --source {params.source:q} --options {params.options:q} "
            "--activations {input.activations} --out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"
