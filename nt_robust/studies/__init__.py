"""Width × λ studies: result tables, reports and figures, read from run directories."""
