"""Studies: one command that trains and compares a paper's arms on the same data and budget."""
