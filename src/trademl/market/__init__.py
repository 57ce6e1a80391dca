"""Market facts (contract specs) and the one execution model every simulator uses."""
