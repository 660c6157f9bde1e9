"""One module per checklist requirement probe."""
