"""Run reports: tables, Pareto plots, a deployment recommendation, regressions between runs."""
