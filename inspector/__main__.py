
from inspector.cli import main_exit

main_exit()
