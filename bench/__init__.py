"""The benchmark suite behind `fusec bench`: workloads, measurements and their output.

Installed as `fusec.bench` (as passes/ and kernels/ are); see README.md here for
the workloads and how to read the tables.
"""
