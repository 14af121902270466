"""Shipped YAML studies (package data so `l2lda-tune --space smoke` works after a plain install)."""
