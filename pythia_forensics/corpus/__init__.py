"""The training stream: indexed token/text streams (indexed), the rule lexicon (lexicon) and
support-frequency counting (support)."""
