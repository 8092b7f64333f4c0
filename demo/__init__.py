"""The embedded default: generated data, the end-to-end demo pipeline over every suite, its report."""
