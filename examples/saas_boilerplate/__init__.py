"""SaaS boilerplate example: orgs and roles, projects, plans and quotas, flags, files, onboarding."""
