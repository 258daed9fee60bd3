"""Scoring: probe sets in (probes), exact per-item log-probs out (score), in the order a call
runs them: options (ScoreOptions), encode (tokenization), plan (which rows run, how batched),
model (loading, weights into a reused skeleton), score (running the plan, the frame, prepare);
cpus holds the thread settings that keep numbers reproducible, audit the numerical audit."""
