# Annotation sheets and galleries out, people's CSVs (data/annotations/, versioned in git) back in, Fig 5.
# The sheets read data/annotations only to carry answers over (read-only, not a DAG input), so that editing
# an annotation reruns Fig 5 alone.


rule sheets:
    input:
        image_inputs(),
        features="results/features/layer{layer}.h5",
        erf=f"results/erf/layer{{layer}}/{MAIN_METHOD}.h5",
        manifest="results/data/manifest.csv",
    output:
        sheet="results/annotation/sheets/layer{layer}.csv",
        galleries=directory("results/annotation/galleries/layer{layer}"),
        index="results/annotation/index/layer{layer}.html",
    params:
        cfg=annotation_params("n_features", "gallery_k", "threshold"),
        images=IMAGES,
    log:
        "results/logs/sheets/layer{layer}.log",
    shell:
        "cafe sheets --params {params.cfg:q} --layer {wildcards.layer} --features {input.features} "
        "--erf {input.erf} --manifest {input.manifest} --images-root {params.images:q} "
        "--annotations-dir data/annotations --out-sheet {output.sheet} --out-galleries {output.galleries} "
        "--out-index {output.index} > {log} 2>&1"


def annotation_files(wildcards=None):
    """The human files that exist now, one person's (data/annotations/layer{L}.csv) and each annotator's
    (data/annotations/<name>/layer{L}.csv): a layer nobody has annotated yet is not an error."""
    return [str(path) for layer in LAYERS for path in human_files("data/annotations", layer).values()]


rule fig5:
    input:
        sheets=expand("results/annotation/sheets/layer{layer}.csv", layer=LAYERS),
        annotations=annotation_files(),
    output:
        figure=reported("results/figures/fig5_nonlocal.png", "../report/fig5.rst", "Fig 5"),
        table="results/tables/fig5_nonlocal.csv",
        metrics="results/metrics/annotation.json",
    params:
        cfg=annotation_params("threshold"),
    log:
        "results/logs/fig5.log",
    shell:
        "cafe fig5 --params {params.cfg:q} --sheets {input.sheets} --annotations-dir data/annotations "
        "--out-figure {output.figure} --out-table {output.table} --metrics {output.metrics} > {log} 2>&1"


def qualitative_inputs(wildcards):
    """Fig 1 and Fig 4 read every layer's sheet, features and ERF maps, and the human files."""
    return {
        "images": image_inputs(),
        "sheets": expand("results/annotation/sheets/layer{layer}.csv", layer=LAYERS),
        "features": expand("results/features/layer{layer}.h5", layer=LAYERS),
        "erf": expand(f"results/erf/layer{{layer}}/{MAIN_METHOD}.h5", layer=LAYERS),
        "manifest": "results/data/manifest.csv",
        "annotations": annotation_files(),
    }


QUALITATIVE = (
    "--params {params.cfg:q} --sheets {input.sheets} --features {input.features} --erf {input.erf} "
    "--manifest {input.manifest} --images-root {params.images:q} --annotations-dir data/annotations "
    "--out-figure {output.figure} --out-table {output.table} > {log} 2>&1"
)


rule fig1:
    input:
        unpack(qualitative_inputs),
    output:
        figure=reported("results/figures/fig1_examples.png", "../report/fig1.rst", "Fig 1"),
        table="results/tables/fig1_examples.csv",
    params:
        cfg=annotation_params("threshold", "fig1_per_group"),
        images=IMAGES,
    log:
        "results/logs/fig1.log",
    shell:
        "cafe fig1 " + QUALITATIVE


rule fig4:
    input:
        unpack(qualitative_inputs),
    output:
        figure=reported("results/figures/fig4_examples.png", "../report/fig4.rst", "Fig 4"),
        table="results/tables/fig4_examples.csv",
    params:
        cfg=annotation_params("threshold", "fig4_per_layer"),
        images=IMAGES,
    log:
        "results/logs/fig4.log",
    shell:
        "cafe fig4 " + QUALITATIVE
