"""The training stream and support-frequency counting, in pipeline order: indexed (``.bin``/
``.idx`` token streams), lexicon (the one lexicon reader), rules (rule YAMLs, cue classes,
frames), vocab (rules compiled for a tokenizer), streams (opening the input as blocks), windows
(the window spec), matching (the event counter), battery (the paper's sequence counter),
counting (the one resumable counting loop), support (`count_support`, the counts frame; the
names callers import), throughput (the counters' benchmark)."""
