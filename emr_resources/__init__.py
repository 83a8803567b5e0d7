"""Everything an EMR cluster for Fruits! needs (README.md here), and `fruits-emr` (cli.py).

A separate package from `fruits_assets`, so none of it is shipped to the cluster with the steps;
its files are package data, found with importlib.resources wherever it is installed.
"""
