# Images -> manifest -> residual-stream activations of every studied layer, from one forward pass per batch.


# The manifest records each image's size and content hash, and DVC's `manifest` stage (which tracks the image
# folder) rewrites it when an image changes. Here the demo's images are an input only to order the jobs: their
# timestamps are ignored (ancient) and their params are this rule's, so a re-checkout of the same images reruns
# nothing while a new demo world does.
rule manifest:
    input:
        [ancient(path) for path in image_inputs()],
    output:
        manifest="results/data/manifest.csv",
        skipped="results/data/skipped_images.csv",
    params:
        cfg=as_json(config["data"]),
        demo=as_json(config["demo"] if DEMO else None),
        hash_cache=HASH_CACHE,
    log:
        "results/logs/manifest.log",
    threads: ALL_CORES
    shell:
        "cafe manifest --params {params.cfg:q} --hash-cache {params.hash_cache:q} --out {output.manifest} "
        "--skipped {output.skipped} --workers {threads} > {log} 2>&1"


rule activations:
    input:
        image_inputs(),
        backbone_checkpoint(),
        manifest="results/data/manifest.csv",
        skipped="results/data/skipped_images.csv",
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
    threads: ALL_CORES
    resources:
        gpu=1,
    shell:
        "cafe activations --params {params.cfg:q} --backbone {params.backbone:q} --manifest {input.manifest} "
        "--skipped {input.skipped} --images-root {params.images:q} --layers {params.layers} --out-dir results/activations "
        "--precision {params.precision} > {log} 2>&1"
