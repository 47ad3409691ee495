"""The commands users run: naas, naas-enrollment, naas-drawing."""
