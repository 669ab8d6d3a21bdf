# Insertion (and deletion) curves per layer and ranking method, the greedy ceiling, and Fig 3.


def erf_input(wildcards):
    """ERF maps for an attribution method; the activation baseline and random orders need none."""
    if wildcards.method in ERF_METHODS:
        return {"erf": f"results/erf/layer{wildcards.layer}/{wildcards.method}.h5"}
    return {}


def erf_flag(wildcards, input):
    return f"--erf {input.erf}" if "erf" in input.keys() else ""


rule insertion:
    input:
        unpack(erf_input),
        image_inputs(),
        backbone_checkpoint(),
        features="results/features/layer{layer}.h5",
        sae="results/sae/layer{layer}.pt",
        manifest="results/data/manifest.csv",
    output:
        "results/insertion/layer{layer}/{method}.csv",
    wildcard_constraints:
        method="|".join(INSERTION_METHODS),
    params:
        cfg=as_json(config["insertion"]),
        backbone=as_json(config["backbone"]),
        images=IMAGES,
        erf=erf_flag,
        precision=precision_for("insertion"),
    log:
        "results/logs/insertion/layer{layer}_{method}.log",
    resources:
        gpu=1,
    shell:
        "cafe insertion --method {wildcards.method} --params {params.cfg:q} --backbone {params.backbone:q} "
        "--layer {wildcards.layer} --features {input.features} --sae {input.sae} --manifest {input.manifest} "
        "--images-root {params.images:q} {params.erf} --out {output} --precision {params.precision} > {log} 2>&1"


rule greedy:
    input:
        image_inputs(),
        backbone_checkpoint(),
        features="results/features/layer{layer}.h5",
        sae="results/sae/layer{layer}.pt",
        manifest="results/data/manifest.csv",
    output:
        "results/insertion/layer{layer}/greedy.csv",
    params:
        cfg=as_json(config["insertion"]),
        backbone=as_json(config["backbone"]),
        images=IMAGES,
        precision=precision_for("insertion"),
    log:
        "results/logs/insertion/layer{layer}_greedy.log",
    resources:
        gpu=1,
    shell:
        "cafe greedy --params {params.cfg:q} --backbone {params.backbone:q} --layer {wildcards.layer} "
        "--features {input.features} --sae {input.sae} --manifest {input.manifest} "
        "--images-root {params.images:q} --out {output} --precision {params.precision} > {log} 2>&1"


rule fig3:
    input:
        curves=expand("results/insertion/layer{layer}/{method}.csv", layer=LAYERS, method=INSERTION_METHODS),
        greedy=expand("results/insertion/layer{layer}/greedy.csv", layer=LAYERS),
    output:
        table="results/tables/insertion_auc.csv",
        figure=reported("results/figures/fig3_insertion.png", "../report/fig3.rst", "Fig 3"),
        metrics="results/metrics/insertion.json",
    params:
        cfg=as_json(config["insertion"]),
    log:
        "results/logs/fig3.log",
    shell:
        "cafe fig3 --params {params.cfg:q} --curves {input.curves} --greedy {input.greedy} "
        "--out-table {output.table} --out-figure {output.figure} --metrics {output.metrics} > {log} 2>&1"
