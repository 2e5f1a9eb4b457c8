"""What a run's results become: the markdown report and plots, the regression gate, the paired comparison."""
