"""Run folders and what they hold: the results document (`lifelong.runs.results`) and, later, the
other files a run leaves behind. Kept free of imports so that importing one module of the package
loads nothing else."""
