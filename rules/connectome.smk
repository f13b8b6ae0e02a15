# Stage 5: the connectome graph of the final segmentation (segments, synapses, contacts).


rule extract_graph:
    input:
        unpack(synapse_input),
        segmentation=result("{dataset}", "segmentation.h5"),
    output:
        graphml=result("{dataset}", "connectome.graphml"),
        nodes=result("{dataset}", "connectome_nodes.csv"),
        edges=result("{dataset}", "connectome_edges.csv"),
        summary=report(
            result("{dataset}", "connectome_summary.json"),
            caption="../report/connectome.rst",
            category="connectome",
        ),
        plot=report(
            result("{dataset}", "connectome_summary.png"),
            caption="../report/connectome.rst",
            category="connectome",
        ),
    log:
        result("{dataset}", "logs/extract_graph.log"),
    benchmark:
        result("{dataset}", "benchmarks/extract_graph.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        dataset=dataset_params("resolution_nm", "synapses", "synapse_units", "roi"),
        connectome=config["connectome"],
        code=stage_code("connectome"),
    script:
        "../scripts/extract_graph.py"
