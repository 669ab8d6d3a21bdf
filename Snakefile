"""CaFE as a Snakemake DAG: images -> activations -> per-layer Matryoshka SAEs -> features -> ERF maps ->
insertion tests (Fig 3) and annotation sheets -> human labels -> Fig 5, and the qualitative Figs 1 and 4.

    snakemake --cores all                                            # the embedded demo (params.yaml)
    snakemake --cores all --configfile workflow/configs/paper.yaml   # the paper's setting
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"  # validated against workflow/schemas/params.schema.yaml in common.smk


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/sae.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/erf.smk"
include: "workflow/rules/insertion.smk"
include: "workflow/rules/annotation.smk"


rule all:
    input:
        rules.fig3.output,
        rules.fig5.output,
        rules.fig1.output,
        rules.fig4.output,
        rules.sae_summary.output,
        expand(rules.sheets.output.sheet, layer=LAYERS),
        ground_truth_outputs(),
    default_target: True


# Targets of the DVC stages (dvc.yaml): each stage runs Snakemake up to one of these.
rule demo:
    input:
        rules.demo_data.output,
        rules.demo_backbone.output,


rule prepare:
    input:
        expand("results/activations/layer{layer}.h5", layer=LAYERS),


rule train_saes:
    input:
        rules.sae_summary.output,


rule analysis:
    input:
        rules.fig3.output,


rule ground_truth_all:
    input:
        ground_truth_outputs(),


rule examples:
    input:
        rules.fig1.output,
        rules.fig4.output,


rule annotation_sheets:
    input:
        expand(rules.sheets.output.sheet, layer=LAYERS),
