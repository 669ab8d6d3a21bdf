"""Insertion tests (Fig 3): insert image patches in a method's ranking order into a canvas and watch the SAE
feature recover; deletion from the same batches; random orders as floor, greedy selection as ceiling.

`selection` picks the tested targets and their score maps, `orders` ranks patches (seeded tie-breaks), `curves`
measures batched curves on the registered canvases, `greedy` builds the ceiling, `run` does one layer x method,
`command` is `cafe insertion` / `cafe greedy`, `summary` turns curve tables into AUCs, tests and agreement, and
`fig3` is `cafe fig3` (it imports no torch, so it starts fast).
"""
