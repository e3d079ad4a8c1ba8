"""GraphInputs and MixedGraphInputs: a graph's static inputs as typed views of one buffer, filled by one copy."""

import torch

from qwen_triton.engine.graph_inputs import GraphInputs, MixedGraphInputs


def test_views_hold_the_step_and_padding_rows():
    inputs = GraphInputs(size=4, max_blocks=5, block_size=16, scratch_block=9, device=torch.device("cpu"))
    inputs.upload([11, 12], [30, 7], [101, 55], [31, 8], [[3, 4], [6, -1, 2]])
    assert inputs.input_ids.tolist() == [11, 12, 0, 0]
    assert inputs.positions.tolist() == [30, 7, 0, 0]
    assert inputs.meta.slot_mapping.tolist() == [101, 55, 9 * 16, 9 * 16]  # padding writes the scratch block
    assert inputs.meta.context_lens.tolist() == [31, 8, 1, 1]
    assert inputs.meta.block_tables.tolist() == [[3, 4, 9, 9, 9], [6, 9, 2, 9, 9], [9] * 5, [9] * 5]
    assert inputs.input_ids.dtype == torch.int64 and inputs.meta.context_lens.dtype == torch.int32
    assert inputs.meta.block_tables.shape == (4, 5) and inputs.meta.is_decode


def test_a_smaller_step_leaves_no_rows_of_the_last_one():
    inputs = GraphInputs(size=4, max_blocks=3, block_size=16, scratch_block=0, device=torch.device("cpu"))
    inputs.upload([1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [6, 7, 8, 9], [[1, 2, 3]] * 4)
    inputs.upload([7], [20], [40], [21], [[2]])
    assert inputs.input_ids.tolist() == [7, 0, 0, 0]
    assert inputs.meta.context_lens.tolist() == [21, 1, 1, 1]
    assert inputs.meta.block_tables.tolist() == [[2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_views_start_on_16_byte_boundaries():
    inputs = GraphInputs(size=3, max_blocks=7, block_size=16, scratch_block=1, device=torch.device("cpu"))
    base = inputs.buffer.data_ptr()
    for view in (
        inputs.input_ids,
        inputs.positions,
        inputs.meta.slot_mapping,
        inputs.meta.context_lens,
        inputs.meta.block_tables,
    ):
        assert (view.data_ptr() - base) % 16 == 0


def test_mixed_inputs_hold_tokens_sequences_and_work_items():
    inputs = MixedGraphInputs(
        tokens=8, max_seqs=4, max_blocks=3, block_size=16, scratch_block=5, device=torch.device("cpu"), block_q=2
    )
    # a decode row, then a 3-token chunk after 10 cached tokens; then a smaller step over one sequence
    inputs.upload([7, 1, 2, 3], [20, 10, 11, 12], [99, 40, 41, 42], [1, 3], [21, 13], [[1, 2], [4]])
    assert inputs.input_ids.tolist() == [7, 1, 2, 3, 0, 0, 0, 0]
    assert inputs.meta.slot_mapping.tolist() == [99, 40, 41, 42] + [5 * 16] * 4
    assert inputs.meta.query_start.tolist() == [0, 1, 4, 4, 4]
    assert inputs.meta.context_lens.tolist() == [21, 13, 1, 1]
    assert inputs.meta.block_tables.tolist() == [[1, 2, 5], [4, 5, 5], [5] * 3, [5] * 3]
    chunks, decodes = inputs.meta.chunk_items.tolist(), inputs.meta.decode_items.tolist()
    assert chunks[:2] == [[1, 0], [1, 2]] and all(seq == -1 for seq, _ in chunks[2:])
    assert decodes == [[0, 0], [-1, 0], [-1, 0], [-1, 0]]
    assert len(chunks) == 8 // 2 + 4 and not inputs.meta.is_decode
    inputs.upload([9], [3], [50], [1], [4], [[3]])
    assert inputs.meta.query_start.tolist() == [0, 1, 1, 1, 1]
    assert inputs.meta.chunk_items.tolist()[0] == [-1, 0] and inputs.meta.decode_items.tolist()[0] == [0, 0]
    assert inputs.fits(8, 4) and not inputs.fits(9, 1) and not inputs.fits(2, 5)
