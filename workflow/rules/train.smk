# One training run per grid point. The only declared output is summary.json (written last, at
# the best checkpoint), so a killed job leaves its last.ckpt in the run folder and resumes from
# it. The resolved run config travels as a params JSON string: any change to it re-runs the job.


rule train:
    input:
        dataset=lambda w: lookup_run(w).dataset.path,
    output:
        summary="results/runs/{experiment}/{run_id}/summary.json",
    log:
        "results/logs/train/{experiment}/{run_id}.log",
    conda:
        "../../envs/scalelearn.yaml"
    threads: CONFIG["resources"]["train"]["threads"]
    resources:
        mem_mb=CONFIG["resources"]["train"]["mem_mb"],
        runtime=CONFIG["resources"]["train"]["runtime"],
        gpu=CONFIG["resources"]["train"]["gpu"],
        jobs_per_gpu=JOBS_PER_GPU,  # read by `scalelearn with-gpu` (a resource: no rerun trigger)
    params:
        run_config=lambda w: json.dumps(lookup_run(w).config),
        folder=lambda w, output: os.path.dirname(output.summary),
    shell:
        "scalelearn with-gpu --gpus {resources.gpu} --jobs-per-gpu {resources.jobs_per_gpu}"
        ' -- "$SCALELEARN_PYTHON" -m scalelearn train'
        " --run-config {params.run_config:q} --out {params.folder}"
        " --threads {threads}"
        " > {log} 2>&1"
