"""The layer types shipped with the operator, registered through entry points like any other."""
