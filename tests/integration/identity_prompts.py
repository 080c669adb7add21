"""Prompts of the token-identity tests: distinct English text, cut to exact lengths at and around the
32-token block boundary and past 512 tokens, each from its own offset so no two share a prefix block."""

from __future__ import annotations

PASSAGES = [
    "The river wound through the valley, past orchards heavy with apples and fields of barley that "
    "turned gold in the late summer light. Farmers rose before dawn to bring the harvest in before the rains.",
    "In 1851 the Great Exhibition opened in London, housed in a vast building of iron and glass that the "
    "newspapers called the Crystal Palace. Six million visitors came to see the machines of the age.",
    "To bake bread, mix flour, water, salt and yeast, knead the dough until it is smooth and elastic, "
    "let it rise until doubled, shape it, and bake it in a hot oven until the crust is deep brown.",
    "A hash table stores keys and values in an array of buckets. A hash function maps each key to a "
    "bucket, and collisions are resolved by chaining or by probing for the next free slot.",
    "The committee met on Tuesday to discuss the budget for the coming year. After a long debate, the "
    "members agreed to fund the new library and to postpone the repairs to the town hall.",
    "Photosynthesis converts light energy into chemical energy. In the chloroplasts of plant cells, "
    "water is split, oxygen is released, and carbon dioxide is fixed into sugars.",
    "She packed her bag in a hurry: a map, a torch, two apples, a notebook and the old brass compass her "
    "grandfather had given her on the morning she left the village for the city.",
    "Distributed systems must tolerate the failure of any machine. Replication keeps copies of the data "
    "on several nodes, and consensus protocols such as Raft keep those copies in agreement.",
]
# Prompt lengths at and around the 32-token block boundary, and long ones (> 512).
LENGTHS = [1, 2, 5, 16, 31, 32, 33, 47, 63, 64, 65, 96, 100, 127, 128, 129, 160, 200, 255, 256, 257, 300, 383,
           384, 385, 450, 511, 512, 513, 600, 700]




def build_prompts(tokenizer) -> dict[int, list[int]]:
    """One prompt per length in LENGTHS."""
    ids = tokenizer.encode(" ".join(PASSAGES * 6))
    prompts = {}
    for index, length in enumerate(LENGTHS):
        start = (index * 53) % (len(ids) - length)
        prompts[length] = ids[start:start + length]
    return prompts
