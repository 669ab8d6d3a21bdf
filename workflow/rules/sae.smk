# One Matryoshka SAE per layer, trained streaming from that layer's activations (resumable).


rule sae:
    input:
        "results/activations/layer{layer}.h5",
    output:
        checkpoint="results/sae/layer{layer}.pt",
        metrics="results/sae/layer{layer}.json",
    params:
        cfg=as_json(config["sae"]),
        precision=precision_for("sae"),
    log:
        "results/logs/sae/layer{layer}.log",
    threads: 1
    resources:
        gpu=1,
    shell:
        "cafe sae --params {params.cfg:q} --activations {input} --out {output.checkpoint} "
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
