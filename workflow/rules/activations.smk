# Images -> manifest -> residual-stream activations of every studied layer, from one forward pass per batch.


# The manifest records each image's size and content hash, and DVC's `manifest` stage (which tracks the image
# folder) rewrites it when an image changes. Here the demo's images are an input only to order the jobs: their
# timestamps are ignored (ancient) and their params are this rule's, so a re-checkout of the same images reruns
# nothing while a new demo world does.
rule manifest:
    input:
        [ancient(path) for path in image_inputs()],
    output:
        "results/data/manifest.csv",
    params:
        cfg=as_json(config["data"]),
        demo=as_json(config["demo"] if DEMO else None),
        hash_cache=HASH_CACHE,
    log:
        "results/logs/manifest.log",
    shell:
        "cafe manifest --params {params.cfg:q} --hash-cache {params.hash_cache:q} --out {output} > {log} 2>&1"


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
    log:
        "results/logs/activations.log",
    threads: workflow.cores
    resources:
        gpu=1,
    shell:
        "cafe activations --params {params.cfg:q} --backbone {params.backbone:q} --manifest {input.manifest} "
        "--images-root {params.images:q} --layers {params.layers} --out-dir results/activations > {log} 2>&1"
