"""CRM jobs example: the CRM pipeline app runs a nightly report and task reminders from schedules."""
