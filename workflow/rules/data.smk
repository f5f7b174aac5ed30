# MNIST pool (one download / read for the whole workflow) and the datasets, one per
# (protocol, name, seed). The parameters come from the config through params, so changing them
# re-triggers the affected datasets.


# The MNIST pool runs on the host that runs Snakemake (localrule): seconds of work, and the
# download needs the internet, which compute nodes often lack.
rule mnist_pool:
    output:
        npz="results/data/mnist/pool.npz",
        manifest="results/data/mnist/pool.json",
    log:
        "results/logs/data/mnist_pool.log",
    localrule: True
    conda:
        "../../envs/scalelearn.yaml"
    threads: 1
    resources:
        mem_mb=CONFIG["resources"]["data"]["mem_mb"],
        runtime=CONFIG["resources"]["data"]["runtime"],
    params:
        source=mnist_source_args(),
    shell:
        "scalelearn data pool {params.source} --out {output.npz} > {log} 2>&1"


rule dataset_scale_distribution:
    input:
        pool="results/data/mnist/pool.npz",
    output:
        npz="results/data/scale_distribution/{name}/seed{seed}.npz",
        manifest="results/data/scale_distribution/{name}/seed{seed}.json",
    log:
        "results/logs/data/scale_distribution/{name}/seed{seed}.log",
    conda:
        "../../envs/scalelearn.yaml"
    threads: CONFIG["resources"]["data"]["threads"]
    resources:
        mem_mb=CONFIG["resources"]["data"]["mem_mb"],
        runtime=CONFIG["resources"]["data"]["runtime"],
    params:
        width=lambda w: repr(lookup_dataset("scale_distribution", w).params["width"]),
        canvas=lambda w: lookup_dataset("scale_distribution", w).params["canvas"],
        digit_size=lambda w: lookup_dataset("scale_distribution", w).params["digit_size"],
        split=lambda w: split_args(lookup_dataset("scale_distribution", w)),
        antialias=lambda w: (
            "--antialias" if lookup_dataset("scale_distribution", w).params["antialias"] else ""
        ),
    shell:
        "scalelearn data scale-distribution --pool {input.pool}"
        " --width {params.width} --canvas {params.canvas} --digit-size {params.digit_size}"
        " --seed {wildcards.seed}"
        " --split {params.split} {params.antialias} --out {output.npz} > {log} 2>&1"


rule dataset_mnist_scale:
    input:
        pool="results/data/mnist/pool.npz",
    output:
        npz="results/data/mnist_scale/{name}/seed{seed}.npz",
        manifest="results/data/mnist_scale/{name}/seed{seed}.json",
    log:
        "results/logs/data/mnist_scale/{name}/seed{seed}.log",
    conda:
        "../../envs/scalelearn.yaml"
    threads: CONFIG["resources"]["data"]["threads"]
    resources:
        mem_mb=CONFIG["resources"]["data"]["mem_mb"],
        runtime=CONFIG["resources"]["data"]["runtime"],
    params:
        scale_range=lambda w: "{scale_min} {scale_max}".format(
            **lookup_dataset("mnist_scale", w).params
        ),
        split=lambda w: split_args(lookup_dataset("mnist_scale", w)),
        antialias=lambda w: (
            "--antialias" if lookup_dataset("mnist_scale", w).params["antialias"] else ""
        ),
    shell:
        "scalelearn data mnist-scale --pool {input.pool} --seed {wildcards.seed}"
        " --scale-range {params.scale_range} --split {params.split} {params.antialias}"
        " --out {output.npz} > {log} 2>&1"
