"""Conversions into focaldet's formats: other frameworks' weights and other datasets' labels."""
