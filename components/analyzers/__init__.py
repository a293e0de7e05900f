"""Analyses of a model's attention (family ``analyzer``): versioned like every component; they return plain data
(per layer x head arrays, tables, head sets) plus figure specs, and the tasks layer logs them."""
