"""Tensor parallelism: one model over several devices of a host, one process per device (rank).

group.py (the process group and its collectives), shard_plan.py (which slice of each checkpoint
tensor a rank reads), linears.py (row-parallel projections and the quantized-group check),
embedding.py (vocabulary-parallel embedding and LM head), workers.py (the rank processes the engine
starts, drives and stops). The engine (engine/llm_engine.py) is rank 0; at tensor_parallel_size 1
nothing here runs.
"""
