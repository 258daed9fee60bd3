from pythia_forensics.cli import main

main()
