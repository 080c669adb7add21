import pytest

from pdserve.bench.prompts import PromptBuilder


@pytest.mark.parametrize("num_tokens", [1, 31, 32, 33, 512, 2047])
def test_synthetic_prompts_have_exact_length_and_ids_in_range(num_tokens):
    builder = PromptBuilder(seed=3, id_low=100, id_high=200)
    prompt = builder.build(index=7, num_tokens=num_tokens)
    assert len(prompt) == num_tokens
    assert all(isinstance(t, int) and 100 <= t < 200 for t in prompt)


def test_same_seed_and_index_give_the_same_prompt_and_others_differ():
    a, b = PromptBuilder(seed=1), PromptBuilder(seed=1)
    assert a.build(5, 64) == b.build(5, 64)
    assert a.build(5, 64) != a.build(6, 64)
    assert a.build(5, 64) != PromptBuilder(seed=2).build(5, 64)


def test_equal_hash_ids_give_equal_prefixes_and_unique_tails():
    builder = PromptBuilder(seed=0, block_tokens=16)
    first = builder.build(0, 50, prefix_hash_ids=(10, 11, 12, 13))
    second = builder.build(1, 60, prefix_hash_ids=(10, 11, 99, 98))
    assert len(first) == 50 and len(second) == 60
    assert first[:32] == second[:32]  # hash ids 10, 11 shared
    assert first[32:48] != second[32:48]  # 12 vs 99


def test_shared_blocks_are_the_same_across_builders_and_positions_matter():
    one = PromptBuilder(seed=4, block_tokens=8).build(0, 16, (1, 2))
    other = PromptBuilder(seed=4, block_tokens=8).build(9, 16, (1, 2))
    swapped = PromptBuilder(seed=4, block_tokens=8).build(0, 16, (2, 1))
    assert one == other
    assert one[:8] == swapped[8:] and one[:8] != swapped[:8]


def test_prompt_longer_than_its_hash_blocks_gets_a_per_request_tail():
    builder = PromptBuilder(seed=0, block_tokens=4)
    a = builder.build(0, 10, (5,))
    b = builder.build(1, 10, (5,))
    assert a[:4] == b[:4] and a[4:] != b[4:]


def test_clipped_prompt_uses_only_the_blocks_it_needs():
    builder = PromptBuilder(seed=0, block_tokens=4)
    assert len(builder.build(0, 6, tuple(range(1000)))) == 6
    assert len(builder._blocks) == 2


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        PromptBuilder(id_low=10, id_high=10)
    with pytest.raises(ValueError):
        PromptBuilder(block_tokens=0)
    with pytest.raises(ValueError):
        PromptBuilder().build(0, 0)
