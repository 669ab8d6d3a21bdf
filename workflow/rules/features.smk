# The first N features of each SAE and their top activations over the analysis images.


rule features:
    input:
        activations="results/activations/layer{layer}.h5",
        sae="results/sae/layer{layer}.pt",
    output:
        "results/features/layer{layer}.h5",
    params:
        cfg=as_json(config["features"]),
    log:
        "results/logs/features/layer{layer}.log",
    resources:
        gpu=1,
    shell:
        "cafe features --params {params.cfg:q} --activations {input.activations} --sae {input.sae} "
        "--out {output} > {log} 2>&1"
