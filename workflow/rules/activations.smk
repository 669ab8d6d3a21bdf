# Images -> manifest -> residual-stream activations of every studied layer, from one forward pass per batch.


rule manifest:
    input:
        image_inputs(),
    output:
        "results/data/manifest.csv",
    params:
        cfg=as_json(config["data"]),
    log:
        "results/logs/manifest.log",
    shell:
        "cafe manifest --params {params.cfg:q} --out {output} > {log} 2>&1"


rule activations:
    input:
        image_inputs(),
        backbone_checkpoint(),
        manifest="results/data/manifest.csv",
    output:
        expand("results/activations/layer{layer}.h5", layer=LAYERS),
    params:
        cfg=as_json(config["activations"]),
        backbone=as_json(config["backbone"]),
        layers=LAYERS,
        images=IMAGES,
        precision=precision_for("activations"),
    log:
        "results/logs/activations.log",
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "cafe activations --params {params.cfg:q} --backbone {params.backbone:q} --manifest {input.manifest} "
        "--images-root {params.images:q} --layers {params.layers} --out-dir results/activations --precision {params.precision} > {log} 2>&1"
