"""Ten questions about the example project's embedding documents, each with the document
that answers it (example_project/macros/embedding_docs.sql). None repeats its document's title."""

QUERIES: list[tuple[str, int]] = [
    ("tools for the garden", 1),
    ("how do I keep my starter alive for baking a loaf", 2),
    ("preparing to run 42 kilometres", 3),
    ("my tyre went flat on the way to work", 6),
    ("teach a young dog where to pee", 7),
    ("what should I pack for a night in a tent", 11),
    ("investing money for old age", 13),
    ("I cannot fall asleep at night", 14),
    ("keeping hives and collecting honey", 15),
    ("my photos come out blurry", 19),
]
