# Aggregation (one CSV per experiment, one row per run), then tables and figures.


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


rule table_isr_curve:
    input:
        "results/aggregate/{experiment}.csv",
    output:
        csv="results/tables/{experiment}_isr.csv",
        tex="results/tables/{experiment}_isr.tex",
    params:
        stem=lambda w, output: output_stem(output),
    log:
        "results/logs/tables/{experiment}_isr.log",
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn table isr-curve --runs {input} --out {params.stem} > {log} 2>&1"


rule plot_isr_curve:
    input:
        "results/aggregate/{experiment}.csv",
    output:
        pdf="results/figures/{experiment}_isr.pdf",
        png=report(
            "results/figures/{experiment}_isr.png",
            caption="../report/isr_curve.rst",
            category="Test error vs ISR",
            labels={"experiment": "{experiment}"},
        ),
    params:
        stem=lambda w, output: output_stem(output),
    log:
        "results/logs/figures/{experiment}_isr.log",
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn plot isr-curve --runs {input} --out {params.stem} > {log} 2>&1"


rule table_learned_scales:
    input:
        unpack(learned_scales_inputs),
    output:
        csv="results/tables/{experiment}_learned.csv",
        tex="results/tables/{experiment}_learned.tex",
    params:
        stem=lambda w, output: output_stem(output),
        reference=lambda w, input: (
            f"--reference {input.reference}" if "reference" in input.keys() else ""
        ),
    log:
        "results/logs/tables/{experiment}_learned.log",
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn table learned-scales --runs {input.runs} {params.reference}"
        " --out {params.stem} > {log} 2>&1"


rule table_e5:
    input:
        unpack(e5_table_inputs),
    output:
        csv=report(
            "results/tables/{experiment}_table.csv",
            caption="../report/e5_table.rst",
            category="MNIST-Scale (E5)",
            labels={"experiment": "{experiment}", "table": "test error"},
        ),
        tex="results/tables/{experiment}_table.tex",
    params:
        stem=lambda w, output: output_stem(output),
        baselines=lambda w, input: (
            f"--baselines {input.baselines}" if "baselines" in input.keys() else ""
        ),
    log:
        "results/logs/tables/{experiment}_table.log",
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn table e5 --runs {input.runs} {params.baselines}"
        " --out {params.stem} > {log} 2>&1"
