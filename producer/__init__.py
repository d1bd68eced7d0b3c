"""The beat side: the poll task, windows and cursor, publishing."""
