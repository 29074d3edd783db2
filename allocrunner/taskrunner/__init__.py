"""Task runners: run one task of an allocation through a driver, from pending to dead."""
