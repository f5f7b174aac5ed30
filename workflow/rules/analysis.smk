# Aggregation (one CSV per experiment, one row per run), then every analysis declared in
# scalelearn.analysis.registry through one rule pattern: a rule `analysis_<name>` per
# declaration, its inputs, options, outputs and report caption all derived from it.


rule aggregate:
    input:
        experiment_summaries,
    output:
        "results/aggregate/{experiment}.csv",
    log:
        "results/logs/aggregate/{experiment}.log",
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn aggregate --out {output} {input} > {log} 2>&1"


for _analysis in registry.ANALYSES.values():

    rule:
        name:
            f"analysis_{_analysis.name}"
        input:
            unpack(lambda w, a=_analysis: analysis_inputs(a, w)),
        output:
            **analysis_rule_outputs(_analysis),
        params:
            name=_analysis.name,
            args=lambda w, input, a=_analysis: analysis_args(a, w, input),
            caption=lambda w, a=_analysis: analysis_caption(a, w),
        log:
            "results/logs/analysis/%s%s.log"
            % (_analysis.name, "_{experiment}" if _analysis.per_experiment else ""),
        conda:
            "../../envs/scalelearn.yaml"
        shell:
            "scalelearn analyse {params.name} {params.args} > {log} 2>&1"
