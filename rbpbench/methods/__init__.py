"""The built-in gradient methods (the paper's five, jfb and phantom), registered through the
plugin host like any third party's."""
