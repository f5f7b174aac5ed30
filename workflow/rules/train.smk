# One training run per grid point. The declared outputs are summary.json (written last, at
# the best checkpoint) and metrics.csv (one row per epoch, read by the scale trajectories), so
# a killed job leaves its last.ckpt in the run folder and resumes from it (the checkpoint holds
# the epoch rows, so metrics.csv is rewritten whole). The resolved run config travels as a
# params JSON string: any change to it re-runs the job.


rule train:
    input:
        dataset=lambda w: lookup_run(w).dataset.path,
    output:
        summary="results/runs/{experiment}/{run_id}/summary.json",
        metrics="results/runs/{experiment}/{run_id}/metrics.csv",
    params:
        run_config=lambda w: json.dumps(lookup_run(w).config),
        folder=lambda w, output: os.path.dirname(output.summary),
    log:
        "results/logs/train/{experiment}/{run_id}.log",
    # The job uses train.threads whatever Snakemake grants (numbers depend on it on a CPU);
    # Snakemake reserves that many cores (capped at --cores).
    threads: lambda w: lookup_run(w).config["train"]["threads"]
    resources:
        mem_mb=CONFIG["resources"]["train"]["mem_mb"],
        runtime=CONFIG["resources"]["train"]["runtime"],
        gpu=CONFIG["resources"]["train"]["gpu"],
    conda:
        "../../envs/scalelearn.yaml"
    shell:
        "scalelearn train --run-config {params.run_config:q} --out {params.folder}"
        " > {log} 2>&1"
