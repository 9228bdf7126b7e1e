"""The relay: claims stored deliveries and hands them to destinations."""
