"""The non-local annotation loop (paper Sec 4.2, Fig 5): sheets and galleries for people, validated ingestion of
their answers, an automatic non-locality score beside them, and Fig 5.

Modules: `layer_maps` (one layer's features + ERF maps, read for the sheets), `score` (automatic score,
agreement), `gallery` and `index` (what a person looks at), `sheets` (`cafe sheets`), `schema` and `ingest`
(human files, `cafe annotate-init`), `answers`, `server` and `page` (`cafe annotate`, the keyboard labelling
page), `agreement` (majority vote, agreement between annotators), `fig5` (`cafe fig5`), `examples` (`cafe fig1`,
`cafe fig4`).
"""
