"""Line searches (backtracking Armijo, zoom with the strong Wolfe conditions) for L-BFGS and
any other direction."""
