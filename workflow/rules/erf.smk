# Effective receptive fields: attribution of each target z_k(I, t) to the input patches, per method.


rule erf:
    input:
        image_inputs(),
        backbone_checkpoint(),
        features="results/features/layer{layer}.h5",
        sae="results/sae/layer{layer}.pt",
        manifest="results/data/manifest.csv",
    output:
        "results/erf/layer{layer}/{method}.h5",
    params:
        cfg=lambda wildcards: erf_params(wildcards.method),
        backbone=as_json(config["backbone"]),
        images=IMAGES,
        precision=precision_for("erf"),
    log:
        "results/logs/erf/layer{layer}_{method}.log",
    resources:
        gpu=1,
    shell:
        "cafe erf --method {wildcards.method} --params {params.cfg:q} --backbone {params.backbone:q} "
        "--layer {wildcards.layer} --features {input.features} --sae {input.sae} --manifest {input.manifest} "
        "--images-root {params.images:q} --out {output} --precision {params.precision} > {log} 2>&1"
