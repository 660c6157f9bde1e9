"""The AI-conformance suite: checklist handling, probes, runner and report."""
