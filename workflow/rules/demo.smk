# The demo world: procedural scenes with known causes, and a small OpenCLIP tower trained on them.


rule demo_data:
    output:
        images=directory(DEMO_IMAGES),
        objects="results/demo/objects.csv",
        masks="results/demo/masks.h5",
    params:
        cfg=as_json({k: v for k, v in config["demo"].items() if k not in ("enabled", "backbone")}),
    log:
        "results/logs/demo_data.log",
    shell:
        "cafe demo-data --params {params.cfg:q} --out results/demo > {log} 2>&1"


rule demo_backbone:
    input:
        images=DEMO_IMAGES,
    output:
        checkpoint=DEMO_BACKBONE,
        metrics="results/backbone/demo.json",
    params:
        cfg=as_json(config["demo"]["backbone"]),
        model=config["backbone"]["model"],
    log:
        "results/logs/demo_backbone.log",
    threads: ALL_CORES
    shell:
        "cafe train-demo-backbone --params {params.cfg:q} --model {params.model} --images {input.images} "
        "--out {output.checkpoint} --metrics {output.metrics} > {log} 2>&1"


rule ground_truth:
    input:
        features=expand("results/features/layer{layer}.h5", layer=LAYERS),
        erf=expand("results/erf/layer{layer}/{method}.h5", layer=LAYERS, method=ERF_METHODS),
        manifest="results/data/manifest.csv",
        objects="results/demo/objects.csv",
        masks="results/demo/masks.h5",
    output:
        targets=expand("results/ground_truth/layer{layer}.csv", layer=LAYERS),
        table="results/tables/ground_truth.csv",
        figure=reported("results/figures/ground_truth.png", "../report/ground_truth.rst", "Demo"),
        metrics="results/metrics/ground_truth.json",
    params:
        cfg=ground_truth_params("patch_overlap", "kind_purity"),
        layers=LAYERS,
        methods=ERF_METHODS,
    log:
        "results/logs/ground_truth.log",
    shell:
        "cafe ground-truth --params {params.cfg:q} --layers {params.layers} --methods {params.methods} "
        "--features {input.features} --erf-dir results/erf --manifest {input.manifest} --objects {input.objects} "
        "--masks {input.masks} --out-targets {output.targets} --out-table {output.table} "
        "--out-figure {output.figure} --metrics {output.metrics} > {log} 2>&1"


rule counterfactuals:
    input:
        backbone_checkpoint(),
        features="results/features/layer{layer}.h5",
        sae="results/sae/layer{layer}.pt",
        manifest="results/data/manifest.csv",
        objects="results/demo/objects.csv",
        masks="results/demo/masks.h5",
    output:
        "results/ground_truth/counterfactual/layer{layer}.csv",
    params:
        cfg=ground_truth_params("batch_size"),
        backbone=as_json(config["backbone"]),
    log:
        "results/logs/counterfactuals/layer{layer}.log",
    shell:
        "cafe counterfactuals --params {params.cfg:q} --backbone {params.backbone:q} --layer {wildcards.layer} "
        "--features {input.features} --sae {input.sae} --manifest {input.manifest} --objects {input.objects} "
        "--masks {input.masks} --out {output} > {log} 2>&1"


rule compositional:
    input:
        counterfactuals=expand("results/ground_truth/counterfactual/layer{layer}.csv", layer=LAYERS),
        features=expand("results/features/layer{layer}.h5", layer=LAYERS),
        erf=expand("results/erf/layer{layer}/{method}.h5", layer=LAYERS, method=ERF_METHODS),
        objects="results/demo/objects.csv",
        masks="results/demo/masks.h5",
    output:
        targets="results/ground_truth/compositional.csv",
        table=reported("results/tables/compositional.csv", "../report/compositional_table.rst", "Demo"),
        figure=reported("results/figures/compositional.png", "../report/compositional.rst", "Demo"),
        metrics="results/metrics/compositional.json",
    params:
        cfg=ground_truth_params("patch_overlap", "min_effect", "suffices", "bootstrap"),
        layers=LAYERS,
        methods=ERF_METHODS,
    log:
        "results/logs/compositional.log",
    shell:
        "cafe compositional --params {params.cfg:q} --layers {params.layers} --methods {params.methods} "
        "--features {input.features} --counterfactuals {input.counterfactuals} --erf-dir results/erf "
        "--objects {input.objects} --masks {input.masks} --out-targets {output.targets} "
        "--out-table {output.table} --out-figure {output.figure} --metrics {output.metrics} > {log} 2>&1"


def ground_truth_outputs():
    return [*rules.ground_truth.output, *rules.compositional.output] if DEMO else []
