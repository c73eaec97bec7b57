"""Public testing API: hypothesis strategies and statistical checks for mechanisms and aggregators.

Our own tests use these; users run them on their own components.
"""
