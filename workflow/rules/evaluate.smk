# The in-depth per-scale test (SPEC §7): one job per run of an experiment with a `per_scale`
# section, its best checkpoint on every test digit at 45 scales; per_scale.csv beside the run.


rule evaluate:
    input:
        summary="results/runs/{experiment}/{run_id}/summary.json",
        dataset=lambda w: lookup_run(w).dataset.path,
    output:
        "results/runs/{experiment}/{run_id}/per_scale.csv",
    params:
        options=per_scale_args,
        folder=lambda w, input: os.path.dirname(input.summary),
    log:
        "results/logs/evaluate/{experiment}/{run_id}.log",
    # The run's own thread count, as in training (CPU numbers may depend on it).
    threads: lambda w: lookup_run(w).config["train"]["threads"]
    resources:
        mem_mb=CONFIG["resources"]["train"]["mem_mb"],
        runtime=CONFIG["resources"]["train"]["runtime"],
        gpu=CONFIG["resources"]["train"]["gpu"],
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn evaluate --run {params.folder} {params.options} --threads {threads}"
        " --out {output} > {log} 2>&1"
