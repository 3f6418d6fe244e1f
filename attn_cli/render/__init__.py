"""Views of a Trace. Each reads only the Trace (and display options), never the pipeline."""
