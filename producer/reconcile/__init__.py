"""The daily reconcile: the run and the reports it keeps."""
